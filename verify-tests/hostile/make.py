"""Writes the hostile-input corpus in this folder (the 50 MB file is made by
the test itself). Run once by hand when the corpus changes:

    python3 verify-tests/hostile/make.py        # needs `cryptography`

Each file is something a user or an attacker could hand to `provision`; the
test `crates/provision/tests/hostile.rs` feeds every one of them to every
command that reads files and expects a clear error, a non-zero exit, no
panic and nothing written.
"""

import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

HERE = os.path.dirname(os.path.abspath(__file__))


def write(name, data):
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(os.path.join(HERE, name), mode) as f:
        f.write(data)


def pem(label, der):
    import base64

    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def csr(name, key=None, extensions=(), name_attrs=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(name_attrs or [x509.NameAttribute(NameOID.COMMON_NAME, name)])
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(key, hashes.SHA256())


# DER by hand, for what no library will encode (invalid UTF-8).
def tlv(tag, body):
    n = len(body)
    if n < 0x80:
        length = bytes([n])
    else:
        octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(octets)]) + octets
    return bytes([tag]) + length + body


def seq(*parts):
    return tlv(0x30, b"".join(parts))


def raw_csr(cn_tag, cn_value):
    """A P-256 CSR whose CN is `cn_value` under tag `cn_tag`, validly signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    cn_oid = bytes.fromhex("0603550403")
    name = seq(tlv(0x31, seq(cn_oid, tlv(cn_tag, cn_value))))
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = seq(tlv(0x02, b"\x00"), name, spki, tlv(0xA0, b""))
    signature = key.sign(info, ec.ECDSA(hashes.SHA256()))
    ecdsa_sha256 = seq(bytes.fromhex("06082a8648ce3d040302"))
    return seq(info, ecdsa_sha256, tlv(0x03, b"\x00" + signature))


def main():
    good = csr("hostile-good")
    good_der = good.public_bytes(serialization.Encoding.DER)
    cert_key = ec.generate_private_key(ec.SECP256R1())
    now = __import__("datetime").datetime.now(__import__("datetime").timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "somebody")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "somebody")]))
        .public_key(cert_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + __import__("datetime").timedelta(days=3650))
        .sign(cert_key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()

    write("empty.pem", b"")
    write("truncated.pem", cert_pem[: len(cert_pem) // 2])
    write("wrong-label.pem", cert_pem.replace("CERTIFICATE", "TOTALLY UNKNOWN"))
    write(
        "base64-garbage.pem",
        "-----BEGIN CERTIFICATE-----\n!!not*base64 at all$$\n-----END CERTIFICATE-----\n",
    )
    write("der-garbage.pem", pem("CERTIFICATE", bytes(range(256)) * 3))
    write("der-garbage-key.pem", pem("PRIVATE KEY", bytes(range(7, 200))))
    write("certificate-as-key.pem", cert_pem)
    write("binary.bin", bytes([0, 159, 146, 150, 255, 254, 0, 1]) * 64)

    flipped = bytearray(good_der)
    flipped[-5] ^= 0x01
    write("csr-flipped-signature.pem", pem("CERTIFICATE REQUEST", bytes(flipped)))
    write(
        "csr-ca-true.pem",
        csr(
            "wants-to-be-a-ca",
            extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)],
        ).public_bytes(serialization.Encoding.PEM),
    )
    write(
        "csr-key-usage.pem",
        csr(
            "wants-cert-sign",
            extensions=[
                (
                    x509.KeyUsage(
                        digital_signature=True,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=True,
                        crl_sign=True,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    True,
                )
            ],
        ).public_bytes(serialization.Encoding.PEM),
    )
    write(
        "csr-rsa1024.pem",
        csr(
            "weak-rsa", key=rsa.generate_private_key(public_exponent=65537, key_size=1024)
        ).public_bytes(serialization.Encoding.PEM),
    )
    write("csr-long-cn.pem", pem("CERTIFICATE REQUEST", raw_csr(0x0C, b"x" * 5000)))
    write(
        "csr-non-utf8-cn.pem",
        pem("CERTIFICATE REQUEST", raw_csr(0x0C, b"dev-\xff\xfe\xc3\x28")),
    )

    write("manifest-unknown-key.toml", '[ca]\ndir = "root_cert"\ncommon_name = "X"\nsurprise = 1\n')
    write(
        "manifest-duplicate-names.toml",
        '[ca]\ndir = "root_cert"\ncommon_name = "X"\n'
        '[[devices]]\nname = "twin"\n[[devices]]\nname = "twin"\n',
    )
    write(
        "manifest-ten-million.toml",
        '[ca]\ndir = "root_cert"\ncommon_name = "X"\n'
        '[[devices]]\nprefix = "d-"\ncount = 10000000\n',
    )
    write(
        "manifest-escaping-name.toml",
        '[ca]\ndir = "root_cert"\ncommon_name = "X"\n[[devices]]\nname = "../x"\n',
    )
    write("manifest-not-toml.toml", "[ca\ndir = \n")


if __name__ == "__main__":
    main()
