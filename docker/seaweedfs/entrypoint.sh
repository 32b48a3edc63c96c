#!/bin/sh
# SeaweedFS for `docker compose up`: `weed mini` (master, volume, filer and S3 in one process) with
# real credentials, written from the environment into an identities file no other user can read.
set -eu
: "${S3_ACCESS_KEY:?set S3_ACCESS_KEY}" "${S3_SECRET_KEY:?set S3_SECRET_KEY}"
umask 077
cat > /tmp/identities.json <<JSON
{"identities": [{"name": "depot",
  "credentials": [{"accessKey": "${S3_ACCESS_KEY}", "secretKey": "${S3_SECRET_KEY}"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
JSON
exec weed mini -dir=/data -master.telemetry=false -s3.config=/tmp/identities.json \
    -s3.port=8333 -webdav=false -admin.ui=false
