"""pkg-a: the base package of the example monorepo."""


def slug(title):
    """``"Hello World"`` → ``"hello-world"``."""
    return "-".join(title.lower().split())
