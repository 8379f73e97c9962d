"""File I/O and command-line plumbing shared by every layer: atomic writes
(:mod:`.atomic`), weights-only checkpoint files (:mod:`.checkpoint_io`), one-line CLI errors
(:mod:`.cli`)."""
