"""One module per ``jaxmoe`` sub-command (``add_arguments`` + ``run``)."""
