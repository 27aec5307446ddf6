# The example projects carry their own tests, run inside their environments by the examples:
# `pytest examples/` collects only the examples themselves.
collect_ignore = ["plugin_project", "cli_tool", "monorepo", "locked_app", "matrix_plugin"]
