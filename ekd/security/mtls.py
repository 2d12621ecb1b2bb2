"""Callers identified by an organisation certificate (mutual TLS, system to system).

The certificate names the organisation (URA in the subjectAltName, `ekd.security.
certificates`); the TLS layer has already checked it chains to the configured CA. The
organisation must have a client registered for mutual TLS (`ekd client add --mtls`): its
scopes are what a certificate caller may do, as a machine client (role `system`).
"""

from __future__ import annotations

from cryptography import x509

from ekd.errors import Unauthorized
from ekd.security.certificates import InvalidOrganisationCertificate, ura_from_certificate
from ekd.security.clients import ClientRegistry
from ekd.security.principal import Principal, Role


def certificate_principal(clients: ClientRegistry, cert: x509.Certificate) -> Principal:
    try:
        ura = ura_from_certificate(cert)
    except InvalidOrganisationCertificate as exc:
        raise Unauthorized(str(exc), error=None) from None
    if ura is None:
        raise Unauthorized("The client certificate names no organisation (URA)", error=None)
    client = clients.by_mtls_org(ura)
    if client is None:
        raise Unauthorized("No client is registered for mutual TLS for the organisation of "
                           "this certificate", error=None)
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    name = str(cn[0].value) if cn else None
    return Principal(org=client.org, client_id=client.client_id, role=Role.SYSTEM,
                     scopes=client.scopes, user_id=None, user_name=name, via="mtls")
