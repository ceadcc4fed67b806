"""eagle-recipes: one TOML recipe -> a Ray task graph -> an EAGLE speculative-decoding draft."""

__version__ = "0.1.0"
