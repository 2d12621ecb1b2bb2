"""The simulated national exchange infrastructure for dossier transfer (issue #7).

The Netherlands exchanges JGZ dossiers over a national switch point, with organisations
identified by UZI server certificates under PKIoverheid. ekd cannot use the real thing in tests
or demos, so this package simulates it: a test PKI (`pki`), and later a directory of
organisations and a store-and-forward relay. See `../shared/jgz/TRANSFER.md`.
"""
