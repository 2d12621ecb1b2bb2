"""Local terminology service over the CodeSystems and ValueSets the server holds."""
