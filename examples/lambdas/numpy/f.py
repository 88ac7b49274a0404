"""A lambda needing a PyPI package: numpy, installed from requirements.txt."""

import numpy as np


def f(event):
    n = int(event.get("n", 10)) if isinstance(event, dict) else 10
    return {"numpy": np.__version__, "sum": int(np.arange(n).sum())}
