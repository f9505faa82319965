#!/usr/bin/env python3
"""Regenerates rsa-vectors.json: RSA signatures made by OpenSSL (an independent implementation)
for wasmesh's RSA verifier tests. Keys of 2048, 2049 (modBits = 1 mod 8: PSS's leading zero
byte), 3072 and 4096 bits; PKCS#1 v1.5 and PSS (salt = hash length) with SHA-256/384/512.
Run from this directory: python3 gen-rsa-vectors.py"""
import base64, json, subprocess, tempfile, os, secrets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

def probable_prime(bits):
    while True:
        c = secrets.randbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if all(pow(secrets.randbelow(c - 3) + 2, c - 1, c) == 1 for _ in range(40)) and (c - 1) % 65537:
            return c

def odd_size_key(path, bits):
    """OpenSSL rounds key sizes down to a multiple of 8; build the key from primes instead."""
    while True:
        p, q = probable_prime(bits - bits // 2), probable_prime(bits // 2)
        if (p * q).bit_length() == bits and p != q:
            break
    d = pow(65537, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p),
                                    rsa.RSAPublicNumbers(65537, p * q))
    key = numbers.private_key()
    open(path, "wb").write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))

def run(*args, data=None):
    return subprocess.run(args, input=data, capture_output=True, check=True).stdout

message = b"eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.eyJpc3MiOiJodHRwczovL3Rlc3QiLCJzdWIiOiJ1In0"
vectors = []
with tempfile.TemporaryDirectory() as d:
    for bits in (2048, 2049, 3072, 4096):
        key = os.path.join(d, f"k{bits}.pem")
        if bits % 8:
            odd_size_key(key, bits)
        else:
            run("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}", "-out", key)
        modulus = run("openssl", "rsa", "-in", key, "-noout", "-modulus").decode().strip().split("=", 1)[1]
        n = bytes.fromhex(modulus if len(modulus) % 2 == 0 else "0" + modulus)
        msg = os.path.join(d, "msg")
        open(msg, "wb").write(message)
        sigs = {}
        for h in ("256", "384", "512"):
            sigs["RS" + h] = b64u(run("openssl", "dgst", "-sha" + h, "-sign", key, msg))
            sigs["PS" + h] = b64u(run("openssl", "dgst", "-sha" + h, "-sign", key,
                                      "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest",
                                      "-sigopt", "rsa_mgf1_md:sha" + h, msg))
        vectors.append({"bits": bits, "n": b64u(n), "e": "AQAB", "signatures": sigs})
json.dump({"message": message.decode(), "keys": vectors}, open("rsa-vectors.json", "w"), indent=1)
