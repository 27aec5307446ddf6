"""Says which attrs it runs with."""

import attrs


def greeting() -> str:
    return f"hello from attrs {attrs.__version__}"
