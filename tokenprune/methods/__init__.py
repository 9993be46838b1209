"""Built-in methods. Each is registered by :mod:`tokenprune.methods.builtin`, an ordinary plugin."""
