#!/usr/bin/env bash
# System packages nightrec needs beside its virtualenv: Java 17 (Spark), redis-server (with
# redis-cli and redis-benchmark), PostgreSQL (the production profile's metadata databases; the tests
# start their own server), openssl (the tests' TLS Redis), OpenBLAS (Spark's ALS uses native
# BLAS/LAPACK when libblas.so.3 and liblapack.so.3 exist: about 30% faster fits) and Chromium (the
# tests open the night's report in a real headless browser).
# Installs them with apt on Debian/Ubuntu; elsewhere says what to install.
set -euo pipefail

need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=(chromium)
if command -v ldconfig >/dev/null 2>&1 && ! ldconfig -p | grep -q 'liblapack.so.3 '; then
  need+=(libopenblas0-pthread)
fi
[ ${#need[@]} -eq 0 ] && exit 0

if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${need[*]} with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "nightrec needs: ${need[*]} (Java 17 for Spark, redis-server for serving and tests, PostgreSQL for the production profile and its tests, openssl for tests, OpenBLAS for fast ALS, Chromium for the report's browser test)." >&2
  echo "This system has no apt-get: install them with your package manager, then re-run make." >&2
  exit 1
fi
