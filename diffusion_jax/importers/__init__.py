"""Importers of released checkpoints: pure functions from files to our parameter trees and
configs (`torch_files`, `diffusers_unet`, `edm`), and `run.write_imported_run`, which makes a
work directory of them that `--mode=sample` and `--mode=eval` restore."""
