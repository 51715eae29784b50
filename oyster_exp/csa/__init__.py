"""The Constructive Safety Alignment method: taxonomy, risk assessment, safety chains, players, Lingo-BP."""
