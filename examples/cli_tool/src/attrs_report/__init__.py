"""attrs-report: print the installed attrs version and which API namespace it offers."""

from importlib.metadata import version


def main():
    try:
        import attrs  # noqa: F401  (the `attrs` namespace exists from attrs 21.3.0)

        api = "attrs"
    except ImportError:
        api = "attr"
    print(f"attrs {version('attrs')} (api: {api})")
