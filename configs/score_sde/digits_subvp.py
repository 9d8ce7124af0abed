"""Score SDE (sub-VP) on the embedded 8x8 digits: `digits_vp.py` with the sub-VP SDE
(Song et al. 2021, Eq. 12). Not a paper setting."""
from configs.score_sde.digits_vp import digits_config


def get_config(arg=None):
    return digits_config("subvpsde", arg)
