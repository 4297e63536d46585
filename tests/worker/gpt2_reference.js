// Encodes text with the npm package gpt-3-encoder, the reference for worker/tokenizer.cpp's GPT-2 BPE.
// usage: node gpt2_reference.js ENCODER_DIR IN.jsonl OUT.jsonl
// IN has one JSON string per line; OUT gets, per line, the JSON array of its token ids. Texts are
// encoded one by one: gpt-3-encoder's encode() copies its whole result for every piece, so it is
// quadratic in the length of one text.
const fs = require('fs');
const path = require('path');
const [encoderDir, inPath, outPath] = process.argv.slice(2);
const { encode } = require(path.resolve(encoderDir, 'index.js'));
const out = fs.readFileSync(inPath, 'utf-8').split('\n').filter(line => line.length > 0)
  .map(line => JSON.stringify(encode(JSON.parse(line))));
fs.writeFileSync(outPath, out.join('\n') + '\n');
