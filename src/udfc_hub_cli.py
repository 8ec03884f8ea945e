"""Launcher of the ``udfc-hub`` command: imports udfc_hub without registering its models yet, so that
``--help``, ``--version`` and usage errors answer before torch, timm and transformers are imported (the command
registers them once its arguments are valid)."""

DEFER_REGISTRATION = False  # set only while the command runs: importing this module alone changes nothing


def main() -> None:
    global DEFER_REGISTRATION
    DEFER_REGISTRATION = True
    try:
        from udfc_hub.cli import _entry
    except KeyboardInterrupt:  # Ctrl-C while Python starts: no traceback
        raise SystemExit(130) from None
    _entry()
