"""Every sampler that docs/ARCHITECTURE.md lists runs, from a config, on a tiny network of every
family it names; the table, the README and the methods' own `sampler_names` agree."""
import os
import re

import jax
import numpy as np
import pytest

from helpers import ROOT, tiny_ddpm_config

from configs.autoencoder import digits as ae_digits
from configs.consistency import digits_ct
from configs.flow import digits_meanflow
from configs.latent import digits_edm
from configs.scm import digits_sct
from configs.score_sde import digits_vp
from diffusion_jax import builders
from diffusion_jax import workdir as workdir_io
from test_edm_method import TINY_MODEL as TINY_NCSNPP, tiny_edm_config


def documented_samplers() -> dict:
    """{sampler name: families} from the sampler table of docs/ARCHITECTURE.md."""
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| ([\w, ]+) \|$",
                      open(os.path.join(ROOT, "docs", "ARCHITECTURE.md")).read(), re.M)
    return {name: tuple(f.strip() for f in families.split(",")) for name, families in rows}


def _tiny_config(family: str, workdir: str):
    if family == "ddpm":
        return tiny_ddpm_config()
    if family == "edm":
        return tiny_edm_config()
    if family == "score_sde":
        config = digits_vp.get_config()
        config.model.update(TINY_NCSNPP)
        return config
    if family == "consistency":
        config = digits_ct.get_config()
        config.model.update(TINY_NCSNPP)
        return config
    if family == "scm":
        config = digits_sct.get_config()
        config.model.update(TINY_NCSNPP)
        return config
    if family == "autoencoder":
        config = ae_digits.get_config()
        config.model.update(ch=8, attention=False)
        return config
    if family == "latent":  # EDM on the latents of an autoencoder run's config (random weights)
        workdir_io.write_config(workdir, _tiny_config("autoencoder", workdir))
        config = digits_edm.get_config()
        config.model.update(TINY_NCSNPP)
        config.latent.autoencoder_workdir = workdir
        return config
    if family == "meanflow":
        config = digits_meanflow.get_config()
        config.model.update(depth=1, hidden_size=32, num_heads=2)
        return config
    raise ValueError(family)


FAMILIES = ("ddpm", "edm", "score_sde", "consistency", "autoencoder", "latent", "meanflow",
            "scm")
CASES = [(name, family) for name, families in documented_samplers().items()
         for family in families]


def test_the_table_lists_every_sampler_of_every_family(tmp_path):
    documented = documented_samplers()
    assert len(documented) >= 13
    for family in FAMILIES:
        method = builders.build_method(_tiny_config(family, str(tmp_path)))
        listed = {name for name, families in documented.items() if family in families}
        assert listed == set(method.sampler_names), family


def test_the_readme_names_every_documented_sampler():
    readme = open(os.path.join(ROOT, "README.md")).read()
    missing = [name for name in documented_samplers() if f"`{name}`" not in readme]
    assert missing == []


@pytest.mark.slow
@pytest.mark.parametrize("name,family", CASES, ids=[f"{f}-{n}" for n, f in CASES])
def test_every_documented_sampler_runs_from_a_config(name, family, tmp_path):
    config = _tiny_config(family, str(tmp_path))
    config.sampling.method = name
    if "num_steps" in config.sampling:
        config.sampling.num_steps = 2 if family == "scm" else 3  # sCM: 1 or 2 without sigmas
    method = builders.build_method(config)
    sampler = builders.build_sampler(config, method)
    params = method.init_params(jax.random.key(0))
    aux = method.init_aux(params, jax.random.key(1))
    x_init = jax.random.normal(jax.random.key(2), (2,) + tuple(method.noise_shape))
    cond = np.zeros(2, np.int32) if method.num_classes else None
    images, stats = jax.jit(lambda p, a, x: method.sample(p, jax.random.key(3), x, cond, aux=a,
                                                          sampler=sampler))(params, aux, x_init)
    assert images.shape == (2,) + tuple(method.image_shape)
    assert np.isfinite(np.asarray(images)).all()
    if family != "autoencoder":
        assert float(stats["nfe"]) >= 1
