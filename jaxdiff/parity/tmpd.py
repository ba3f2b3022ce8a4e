"""Replay of the TMPD fixtures (`tmpd_<task>.npz` from azula's TMPDenoiser, make_azula.py;
`tmpd_<form>_<task>.npz` from tmpdjax's KPDDPM / KPDDPMdiag / KPDDPMplus, make_tmpdjax.py).

Both kinds store the same arrays and rules as the MMPS fixtures (jaxdiff.parity.mmps, whose
replay this is): the whole chain fed x_T and the draws, and every step alone from the
reference's own input (teacher forcing), each floored at 3x the reference's float64 level and
capped at 1e-3 max(1, max|ref|). The sidecar's guidance names the form: covariance "rowsum"
(azula, tmpdjax's KPDDPMplus), "diag" (KPDDPMdiag) or "full" with solver "dense" and product
"jvp" (KPDDPM's jacrev matrix, solved exactly).
"""

from __future__ import annotations

from jaxdiff.parity.mmps import replay as _replay


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    return _replay(npz_path, model_dir, dtype)
