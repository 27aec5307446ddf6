import locked_app


def test_greeting():
    assert locked_app.greeting().startswith("hello from attrs ")
