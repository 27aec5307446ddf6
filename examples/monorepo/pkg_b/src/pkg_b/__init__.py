"""pkg-b: builds on its sibling pkg-a."""

from pkg_a import slug


def post_url(title):
    return f"/posts/{slug(title)}/"
