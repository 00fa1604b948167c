"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.support.schemathesis_hooks): /predict_npy's body is raw bytes, sent as is."""

import schemathesis

schemathesis.serializer.alias("application/x-npy", "application/octet-stream")
