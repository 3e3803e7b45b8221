#!/bin/sh
# Rebuilds main.js from src/ with the versions package-lock.json pins (needs Node and npm).
set -e
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
npx esbuild src/main.js --bundle --format=esm --platform=neutral --main-fields=module,main --outfile=main.js --legal-comments=eof
