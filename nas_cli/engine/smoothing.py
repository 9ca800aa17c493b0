"""Smoothed training-loss curves over iterations: simple, cumulative and exponential moving averages."""

from __future__ import annotations

import pandas as pd


def smooth(losses: pd.Series, window: int, alpha: float) -> pd.DataFrame:
    """Per iteration: the raw loss, its SMA over ``window``, its CMA, and its EMA with weight ``alpha``.

    The EMA is bias-corrected (divided by ``1 - (1 - alpha) ** t``) so it starts at
    the first losses instead of at zero.
    """
    losses = losses.reset_index(drop=True).astype(float)
    return pd.DataFrame(
        {
            "iteration": range(1, len(losses) + 1),
            "loss": losses,
            "loss_sma": losses.rolling(window, min_periods=1).mean(),
            "loss_cma": losses.expanding().mean(),
            "loss_ema": losses.ewm(alpha=alpha, adjust=True).mean(),
        }
    )
