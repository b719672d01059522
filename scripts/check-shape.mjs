#!/usr/bin/env node
// The shape rules of src/ (docs/architecture.md): no file over 500 lines, no function over 80 lines.
// Functions are every function-like node of the TypeScript AST (declarations, methods, arrows,
// function expressions, accessors, constructors), measured from their first to their last line.
// Part of `npm run lint`; prints each breach as `path:line name N lines` and exits 1 when there is one.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import ts from "typescript";

export const MAX_FILE_LINES = 500;
export const MAX_FUNCTION_LINES = 80;

function sources(dir) {
  let out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out = out.concat(sources(p));
    else if (name.endsWith(".ts")) out.push(p);
  }
  return out;
}

function nameOf(node, sf) {
  if (node.name) return node.name.getText(sf);
  const parent = node.parent;
  if (parent && ts.isVariableDeclaration(parent)) return parent.name.getText(sf);
  if (parent && ts.isPropertyAssignment(parent)) return parent.name.getText(sf);
  if (parent && ts.isPropertyDeclaration(parent)) return parent.name.getText(sf);
  if (ts.isConstructorDeclaration(node)) return "constructor";
  return "(anonymous)";
}

const breaches = [];
const root = process.argv[2] ?? "src";
for (const file of sources(root).sort()) {
  const text = readFileSync(file, "utf8");
  const rel = relative(process.cwd(), file);
  const lines = text.split("\n").length - (text.endsWith("\n") ? 1 : 0);
  if (lines > MAX_FILE_LINES) breaches.push(`${rel} ${lines} lines (file; at most ${MAX_FILE_LINES})`);
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const visit = (node) => {
    if (ts.isFunctionLike(node) && "body" in node && node.body) {
      const first = sf.getLineAndCharacterOfPosition(node.getStart(sf)).line;
      const last = sf.getLineAndCharacterOfPosition(node.getEnd()).line;
      const n = last - first + 1;
      if (n > MAX_FUNCTION_LINES) {
        breaches.push(
          `${rel}:${first + 1} ${nameOf(node, sf)} ${n} lines (function; at most ${MAX_FUNCTION_LINES})`,
        );
      }
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
}
for (const b of breaches) console.error(`check-shape: ${b}`);
process.exit(breaches.length > 0 ? 1 : 0);
