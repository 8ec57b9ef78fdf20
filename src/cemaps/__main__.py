"""``python -m cemaps`` (and ``accelerate launch -m cemaps capture ...``)."""

from cemaps.cli import main

main()
