"""TR116 cross-model benchmark bundle.

Data flows one way: profile → plan → runtime → agents → records → store → analysis → report.
"""

__version__ = "0.1.0"
