import importlib.metadata

from pkg_b import post_url


def test_post_url():
    assert post_url("Hello World") == "/posts/hello-world/"


def test_sibling_comes_from_the_monorepo():
    assert importlib.metadata.version("pkg-a") == "0.1.0"
