#!/usr/bin/env python3
"""Regenerates rsa-test-keys.json: RSA private keys (n, e, d as base64url) for test tokens that
jwt-simple cannot sign: keys Envoy's jwt_authn uses but jwt-simple refuses (e = 3, 512 and 1024
bits, 8192 bits) and rsa1.pem's numbers, to sign raw header/payload bytes (repeated JSON member
names). Test-only keys, never trusted anywhere. Run from this directory: python3 gen-rsa-test-keys.py"""
import base64, json, secrets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

def b64u_int(i):
    b = i.to_bytes((i.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

def probable_prime(bits, e):
    while True:
        c = secrets.randbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if (c - 1) % e and all(pow(secrets.randbelow(c - 3) + 2, c - 1, c) == 1 for _ in range(40)):
            return c

def small_key(bits, e):
    """cryptography refuses keys under 1024 bits: build them from primes."""
    while True:
        p, q = probable_prime(bits - bits // 2, e), probable_prime(bits // 2, e)
        if (p * q).bit_length() == bits and p != q:
            return p * q, e, pow(e, -1, (p - 1) * (q - 1))

def numbers(key):
    n = key.private_numbers()
    return n.public_numbers.n, n.public_numbers.e, n.d

keys = {}
with open("rsa1.pem", "rb") as f:
    keys["rsa1"] = numbers(serialization.load_pem_private_key(f.read(), None))
keys["rsa512"] = small_key(512, 65537)
keys["rsa1024"] = numbers(rsa.generate_private_key(65537, 1024))
keys["rsa2048e3"] = numbers(rsa.generate_private_key(3, 2048))
keys["rsa8192"] = numbers(rsa.generate_private_key(65537, 8192))
out = {name: {"n": b64u_int(n), "e": b64u_int(e), "d": b64u_int(d)} for name, (n, e, d) in keys.items()}
with open("rsa-test-keys.json", "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
