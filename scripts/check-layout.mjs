#!/usr/bin/env node
// The layout rules of src/ (docs/architecture.md), part of `npm run lint`:
// - no file over MAX_FILE_LINES lines, no function over MAX_FUNCTION_LINES (every function-like node of
//   the TypeScript AST: declarations, methods, arrows, function expressions, accessors, constructors,
//   measured from their first to their last line), with no exceptions;
// - import directions: ca/, discovery/ and config/ import nothing of proxy/; nothing outside src/cli
//   imports src/cli (the programs and entry points), but the package entry src/index.ts.
// Prints each breach as `check-layout: ...` and exits 1 when there is one.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import ts from "typescript";

export const MAX_FILE_LINES = 500;
export const MAX_FUNCTION_LINES = 80;

/** Folders (under src/) that must not import the folders listed. */
const FORBIDDEN_IMPORTS = [
  { from: "ca/", to: ["proxy/", "cli/"] },
  { from: "discovery/", to: ["proxy/", "cli/"] },
  { from: "config/", to: ["proxy/", "cli/"] },
  // index.ts is itself an entry (the package's): it re-exports the CLI program.
  { from: "", to: ["cli/"], except: ["cli/", "index.ts"] },
];

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

const root = resolve("src");
const breaches = [];
for (const file of sources(root).sort()) {
  const text = readFileSync(file, "utf8");
  const rel = relative(process.cwd(), file);
  const inSrc = relative(root, file);
  const lines = text.split("\n").length - (text.endsWith("\n") ? 1 : 0);
  if (lines > MAX_FILE_LINES) breaches.push(`${rel} has ${lines} lines (at most ${MAX_FILE_LINES})`);
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const visit = (node) => {
    if (ts.isFunctionLike(node) && "body" in node && node.body) {
      const first = sf.getLineAndCharacterOfPosition(node.getStart(sf)).line;
      const last = sf.getLineAndCharacterOfPosition(node.getEnd()).line;
      const n = last - first + 1;
      if (n > MAX_FUNCTION_LINES)
        breaches.push(
          `${rel}:${first + 1} ${nameOf(node, sf)} is ${n} lines (at most ${MAX_FUNCTION_LINES})`,
        );
    }
    // import/export ... from "...", and import("...") expressions.
    const spec =
      ts.isImportDeclaration(node) || ts.isExportDeclaration(node)
        ? node.moduleSpecifier
        : ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword
          ? node.arguments[0]
          : undefined;
    if (spec && ts.isStringLiteral(spec) && spec.text.startsWith(".")) {
      const target = relative(root, resolve(dirname(file), spec.text));
      for (const rule of FORBIDDEN_IMPORTS) {
        if (!inSrc.startsWith(rule.from) || rule.except?.some((e) => inSrc.startsWith(e))) continue;
        const hit = rule.to.find((t) => target.startsWith(t));
        if (hit)
          breaches.push(`${rel} imports ${spec.text}: ${rule.from || "library code"} must not import ${hit}`);
      }
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
}
for (const b of breaches) console.error(`check-layout: ${b}`);
process.exit(breaches.length > 0 ? 1 : 0);
