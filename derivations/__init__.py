"""SymPy derivations: each layer's forward built symbolically at a tiny size, its gradient taken
symbolically, and the closed-form backward that refimpl uses proven equal to it, exactly."""
