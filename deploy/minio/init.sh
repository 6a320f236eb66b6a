#!/bin/sh
# One-shot set-up of the compose MinIO, run by the minio-init service (image minio/mc):
# the `photos` bucket, and a bucket notification for new objects under users/ sent to the
# B2RELAY webhook target (configured on the minio service; see b2-relay.py for why a relay).
# Idempotent: safe to run on every `docker compose up`.
set -eu

i=0
until mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
  i=$((i + 1))
  [ "$i" -gt 60 ] && { echo "minio-init: MinIO did not come up" >&2; exit 1; }
  sleep 1
done

mc mb --ignore-existing local/photos
# Same filter as the B2 rule in production: object-created events, objectNamePrefix users/.
mc event add local/photos arn:minio:sqs::B2RELAY:webhook --event put --prefix users/ --ignore-existing
mc event ls local/photos
echo "minio-init: bucket photos ready, notifications -> b2-relay"
