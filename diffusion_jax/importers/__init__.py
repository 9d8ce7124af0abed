"""Importers of weights trained by other codebases: pure functions from files or state dicts
(dicts of numpy arrays) to our parameter trees and configs (`torch_files`, `diffusers_unet`,
`edm`, `edm2`, `stable_diffusion`, `dit`), and `run.write_imported_run`, which makes a work
directory of them that `--mode=sample` and `--mode=eval` restore."""
