"""Who is calling and what they may do: tokens, certificates, scopes, roles.

Nothing here imports the web framework: the API layer turns a request into a `Principal`
(`ekd.api.auth`) and interactions ask `ekd.security.policy` whether it may act.
"""
