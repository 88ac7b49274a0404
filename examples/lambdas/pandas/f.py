"""A lambda using pandas (and, through it, numpy)."""

import pandas as pd


def f(event):
    frame = pd.DataFrame({"a": [1, 2, 3], "b": [10, 20, 30]})
    return {"pandas": pd.__version__, "total": int(frame.sum().sum())}
