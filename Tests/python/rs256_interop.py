"""RS256 JWTs between PyJWT (with the cryptography package) and wps-bridge's BridgeCrypto.

  rs256_interop.py sign             -> {"token", "n", "e"}: a new 2048-bit key signs a JWT
  rs256_interop.py verify TOKEN N E -> the claims, if the signature verifies (exit 1 if not)

N and E are the key's JWK members (base64url, big-endian).
"""
import base64
import json
import sys

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


def b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def uint_b64url(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def main() -> int:
    if sys.argv[1] == "sign":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = key.public_key().public_numbers()
        claims = {"iss": "https://python.example/", "sub": "pyjwt", "aud": "https://webpubsub.azure.com", "exp": 4102444800}
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "py-1"})
        print(json.dumps({"token": token, "n": b64url_uint(numbers.n), "e": b64url_uint(numbers.e)}))
        return 0
    if sys.argv[1] == "verify":
        token, n, e = sys.argv[2:5]
        public_key = rsa.RSAPublicNumbers(uint_b64url(e), uint_b64url(n)).public_key()
        try:
            claims = jwt.decode(token, public_key, algorithms=["RS256"], options={"verify_aud": False})
        except jwt.InvalidTokenError as error:
            print(f"PyJWT refused the token: {error!r}", file=sys.stderr)
            return 1
        print(json.dumps(claims))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
