"""painav: bedside capture of patient video and voice, encrypted at the source."""

__version__ = "0.1.0"
