#!/bin/sh
# Test PKI, certificates and the signed directory for the two-organisation compose setup
# (docker compose --profile exchange up). Runs once; keys are generated here, never committed.
set -eu
D="${EKD_EXCHANGE_HOME:-/exchange}"
if [ -f "$D/directory/entries.json" ]; then
  echo "exchange setup: $D already set up"
  exit 0
fi
ekd pki init --dir "$D/pki"
add() {  # URA NAME HOST ROLE [POSTCODES]
  ekd pki issue --dir "$D/pki" --ura "$1" --name "$2"
  # what the server presents over TLS: its certificate and the intermediate
  cat "$D/pki/$1.pem" "$D/pki/intermediate.pem" > "$D/pki/$1-full.pem"
  set -- "$@" ""
  ekd exchange directory add --folder "$D/directory" --ura "$1" --name "$2" \
    --endpoint "https://$3:8443" --cert "$D/pki/$1.pem" --role "$4" \
    ${5:+--postcodes "$5"}
}
ekd exchange directory init --folder "$D/directory"
add 99990009 "Landelijk schakelpunt (test)" relay relay
add 11110001 "Thuiszorg West (consultatiebureau)" ekd-thuiszorg organisation
add 22220002 "GGD West" ekd-ggd organisation 1000-1999
echo "exchange setup: done in $D"
