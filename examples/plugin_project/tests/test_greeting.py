def test_default_greeting(greeting):
    assert greeting == "Hello, world!"


def test_option_reaches_the_fixture(pytester):
    pytester.makepyfile("def test_it(greeting):\n    assert greeting == 'Hello, cowenv!'\n")
    pytester.runpytest("--greeting-name=cowenv").assert_outcomes(passed=1)


def test_loaded_through_its_entry_point(request):
    assert request.config.pluginmanager.hasplugin("greeting")
