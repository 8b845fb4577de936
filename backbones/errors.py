"""Errors for bad model arguments or inputs; ``main.py`` prints their message alone, without a traceback."""


class ModelConfigError(ValueError):
    """A model argument or input the model cannot take (the message names the value and what is allowed)."""

    user_error = True
