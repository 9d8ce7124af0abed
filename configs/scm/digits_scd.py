"""sCD (continuous-time consistency distillation, Lu & Song 2024) on the embedded 8x8 digits
from an EDM digits teacher, in CPU minutes. Not a paper setting.

Train the teacher first (`python3 launch.py --config=configs/edm/digits.py --workdir=T`), then
`python3 launch.py --config=configs/scm/digits_scd.py --config.scm.teacher_workdir=T
--workdir=S`. The student has the teacher's network (188,769 parameters, plus 129 of u(t)) with
c_noise 'edm' (F = -F_edm(x_t / sigma_d, ln(sigma_d tan t) / 4): the EDM teacher is a TrigFlow
model as it stands) and starts from its weights, as the paper's sCD starts from its teacher.
TrigFlow sigma_d 0.5, P_mean -1.0 / P_std 1.4 (unverified for the paper), tangent warm-up over
500 steps (the paper's 10k scaled), c = 0.1, adaptive weighting; Adam 2e-4 (beta2 0.99) with
100 warm-up steps, gradient clipping at 1, 2000 steps of batch 128, EMA 0.999. Sampling: one
step; `--config.sampling.method=multistep --config.sampling.num_steps=2` for two (t_mid = 1.1).
"""
from configs.scm.digits_sct import digits_scm_config


def get_config(arg=None):
    config = digits_scm_config("scd", arg)
    config.scm.update(c_noise="edm", init_from_teacher=True, P_mean=-1.0, P_std=1.4,
                      tangent_warmup_steps=500)
    config.training.update(num_steps=2000, checkpoint_every=1000, log_every=100)
    config.optim.update(name="adam", lr=2e-4, warmup_steps=100, grad_clip=1.0, beta2=0.99)
    return config
