"""The original Python design's flow, for `mqtt-bench` (`cargo xtask bench`).

For each identity: a private key, a CSR, the CSR's signature checked, a
certificate signed by the CA, and the three files written (NAME.key,
NAME_csr.pem, NAME_cert.pem), as ClientCertificateGenerator.
generate_signed_certificate does with `cryptography`. Prints one JSON object.

usage: python3 identities.py p256|rsa2048 COUNT OUTDIR

`mqtt-bench` embeds this file and runs it with `python -c`.
"""

import datetime
import json
import os
import sys
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def new_key(key_type):
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def main():
    key_type, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    os.makedirs(out, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench Root")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    start = time.perf_counter()
    for i in range(count):
        name = f"dev-{i}"
        key = new_key(key_type)
        with open(os.path.join(out, f"{name}.key"), "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .sign(key, hashes.SHA256())
        )
        with open(os.path.join(out, f"{name}_csr.pem"), "wb") as f:
            f.write(csr.public_bytes(serialization.Encoding.PEM))
        assert csr.is_signature_valid
        cert = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(ca_cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        with open(os.path.join(out, f"{name}_cert.pem"), "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
    seconds = time.perf_counter() - start
    print(json.dumps({"what": "python_identities", "key_type": key_type, "count": count,
                      "seconds": seconds, "per_second": count / seconds}))


if __name__ == "__main__":
    main()
