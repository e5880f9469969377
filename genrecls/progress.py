"""Progress for the steps that take more than a few seconds, following a config's `verbose`.

verbose "auto" or 1: a Keras progress bar; 2 (--quiet): one line when the step ends; 0: nothing.
"""

from __future__ import annotations


class _Silent:
    def add(self, n, values=None) -> None:
        pass


def progress_bar(n: int, headline: str, verbose: int | str = "auto", unit: str = "poster"):
    """A counter of `n` units (call .add(k)), announced by `headline`; silent when verbose is 0.

    Keras (and so TensorFlow) is imported only when something is shown, so commands
    that never show progress stay light.
    """
    if verbose == 0:
        return _Silent()
    from keras.utils import Progbar

    print(headline, flush=True)
    return Progbar(n, unit_name=unit, verbose=2 if verbose == 2 else 1)
