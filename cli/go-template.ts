import { RegfsError } from '../util/errors.js';

/*
 * A small subset of Go's text/template, for `--format go-template=TEMPLATE` (ORAS 1.2 renders its JSON
 * model through text/template plus sprig). Supported: literal text; `{{.}}`, `{{.a.b}}` field paths
 * (on the current value, `$` for the root); `{{range PIPE}}...{{else}}...{{end}}` over arrays and objects
 * (dot becomes the element); `{{if PIPE}}...{{else}}...{{end}}`; `{{with PIPE}}...{{end}}`; functions
 * `index X "k" ...`, `json X` / `toJson X` / `toPrettyJson X`, `len X`, `join SEP X`, `upper X`, `lower X`;
 * trim markers `{{- ` and ` -}}`; string and number literals; a trailing `| fn` pipe. Anything else is a
 * template error (exit 2, INVALID_ARGUMENT).
 */

type Node =
  | { t: 'text'; s: string }
  | { t: 'out'; expr: string }
  | { t: 'range' | 'if' | 'with'; expr: string; body: Node[]; alt: Node[] };

function bad(msg: string): never {
  throw new RegfsError('INVALID_ARGUMENT', `invalid go-template: ${msg}`);
}

/** parseTemplate splits a template into nodes, checking that every block is closed. */
function parseTemplate(src: string): Node[] {
  const tokens: Array<{ text?: string; action?: string }> = [];
  let i = 0;
  while (i < src.length) {
    const open = src.indexOf('{{', i);
    if (open < 0) {
      tokens.push({ text: src.slice(i) });
      break;
    }
    let text = src.slice(i, open);
    const close = src.indexOf('}}', open + 2);
    if (close < 0) bad(`unclosed action at offset ${open}`);
    let inner = src.slice(open + 2, close);
    if (inner.startsWith('- ')) {
      text = text.replace(/\s+$/, '');
      inner = inner.slice(2);
    }
    let trimNext = false;
    if (inner.endsWith(' -')) {
      inner = inner.slice(0, -2);
      trimNext = true;
    }
    tokens.push({ text }, { action: inner.trim() });
    i = close + 2;
    if (trimNext) while (i < src.length && /\s/.test(src[i]!)) i++;
  }
  const root: Node[] = [];
  const stack: Array<{ node: Extract<Node, { body: Node[] }>; inAlt: boolean }> = [];
  const target = (): Node[] => {
    const top = stack[stack.length - 1];
    return top ? (top.inAlt ? top.node.alt : top.node.body) : root;
  };
  for (const tok of tokens) {
    if (tok.text !== undefined) {
      if (tok.text) target().push({ t: 'text', s: tok.text });
      continue;
    }
    const a = tok.action!;
    if (a.startsWith('/*')) continue;
    const m = /^(range|if|with)\s+(.+)$/s.exec(a);
    if (m) {
      const node = { t: m[1] as 'range' | 'if' | 'with', expr: m[2]!.trim(), body: [], alt: [] };
      target().push(node);
      stack.push({ node, inAlt: false });
    } else if (a === 'else') {
      const top = stack[stack.length - 1];
      if (!top || top.inAlt) bad('{{else}} outside range/if/with');
      top.inAlt = true;
    } else if (a === 'end') {
      if (!stack.pop()) bad('{{end}} without range/if/with');
    } else if (a === '') {
      bad('empty action {{}}');
    } else {
      target().push({ t: 'out', expr: a });
    }
  }
  if (stack.length) bad(`{{${stack[stack.length - 1]!.node.t}}} is not closed by {{end}}`);
  return root;
}

/** lex splits an expression into words: field paths, quoted strings, numbers, function names, `|`. */
function lex(expr: string): string[] {
  const out: string[] = [];
  const re = /\s*("(?:[^"\\]|\\.)*"|`[^`]*`|\||[^\s|()]+|\(|\))/gy;
  let m: RegExpExecArray | null;
  let last = 0;
  while ((m = re.exec(expr))) {
    out.push(m[1]!);
    last = re.lastIndex;
  }
  if (expr.slice(last).trim()) bad(`cannot read ${JSON.stringify(expr.slice(last).trim())}`);
  if (out.includes('(') || out.includes(')')) bad(`parentheses are not supported in ${JSON.stringify(expr)}`);
  return out;
}

function field(v: unknown, name: string): unknown {
  if (v === null || v === undefined) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) bad(`cannot take field .${name} of a ${Array.isArray(v) ? 'list' : typeof v}`);
  return (v as Record<string, unknown>)[name];
}

function operand(word: string, dot: unknown, root: unknown): unknown {
  if (word.startsWith('"')) return JSON.parse(word) as string;
  if (word.startsWith('`')) return word.slice(1, -1);
  if (/^-?\d+(\.\d+)?$/.test(word)) return Number(word);
  if (word === 'true' || word === 'false') return word === 'true';
  if (word === '.' || word === '$') return word === '.' ? dot : root;
  if (word.startsWith('.') || word.startsWith('$.')) {
    let v = word.startsWith('$') ? root : dot;
    for (const part of word.replace(/^\$/, '').slice(1).split('.')) {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(part)) bad(`bad field name in ${JSON.stringify(word)}`);
      v = field(v, part);
    }
    return v;
  }
  return bad(`unknown word ${JSON.stringify(word)} (supported: .field paths, "strings", numbers and the functions ${Object.keys(FUNCS).join(', ')})`);
}

const FUNCS: Record<string, (...args: unknown[]) => unknown> = {
  index: (x, ...keys) => keys.reduce<unknown>((v, k) => (Array.isArray(v) && typeof k === 'number' ? v[k] : v !== null && typeof v === 'object' ? (v as Record<string, unknown>)[String(k)] : undefined), x),
  json: (x) => JSON.stringify(x ?? null),
  toJson: (x) => JSON.stringify(x ?? null),
  toPrettyJson: (x) => JSON.stringify(x ?? null, null, 2),
  len: (x) => (Array.isArray(x) || typeof x === 'string' ? x.length : x && typeof x === 'object' ? Object.keys(x).length : bad('len of a non-collection')),
  join: (sep, x) => (Array.isArray(x) ? x.map(show).join(String(sep)) : bad('join needs a list')),
  upper: (x) => show(x).toUpperCase(),
  lower: (x) => show(x).toLowerCase(),
};

function call(words: string[], dot: unknown, root: unknown, piped?: { v: unknown }): unknown {
  const [head, ...rest] = words;
  if (head === undefined) bad('empty command in pipeline');
  const fn = FUNCS[head];
  if (!fn) {
    if (rest.length || piped) bad(`${JSON.stringify(head)} is not a function (supported: ${Object.keys(FUNCS).join(', ')})`);
    return operand(head, dot, root);
  }
  const args = rest.map((w) => operand(w, dot, root));
  if (piped) args.push(piped.v);
  return fn(...args);
}

function evaluate(expr: string, dot: unknown, root: unknown): unknown {
  const words = lex(expr);
  const cmds: string[][] = [[]];
  for (const w of words) if (w === '|') cmds.push([]);
    else cmds[cmds.length - 1]!.push(w);
  let v: { v: unknown } | undefined;
  for (const c of cmds) v = { v: call(c, dot, root, v) };
  return v!.v;
}

/** show prints a value as Go's template does for the JSON model: strings bare, <no value> for missing, maps and lists as JSON. */
function show(v: unknown): string {
  if (v === undefined || v === null) return '<no value>';
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return JSON.stringify(v);
}

function truthy(v: unknown): boolean {
  if (Array.isArray(v)) return v.length > 0;
  if (v && typeof v === 'object') return Object.keys(v).length > 0;
  return Boolean(v);
}

function render(nodes: Node[], dot: unknown, root: unknown, out: string[]): void {
  for (const n of nodes) {
    if (n.t === 'text') out.push(n.s);
    else if (n.t === 'out') out.push(show(evaluate(n.expr, dot, root)));
    else {
      const v = evaluate(n.expr, dot, root);
      if (n.t === 'range') {
        const items = Array.isArray(v) ? v : v && typeof v === 'object' ? Object.keys(v).sort().map((k) => (v as Record<string, unknown>)[k]) : v === undefined || v === null ? [] : bad(`range over a ${typeof v}`);
        if (items.length) for (const it of items) render(n.body, it, root, out);
        else render(n.alt, dot, root, out);
      } else if (truthy(v)) render(n.body, n.t === 'with' ? v : dot, root, out);
      else render(n.alt, dot, root, out);
    }
  }
}

const OPERAND = /^(?:"(?:[^"\\]|\\.)*"|`[^`]*`|-?\d+(?:\.\d+)?|true|false|\.|\$|\$?(?:\.[A-Za-z_][A-Za-z0-9_]*)+)$/;

/** checkExpr refuses, before rendering, any word that is neither an operand nor a known function at the head of a command. */
function checkExpr(expr: string): void {
  const cmds: string[][] = [[]];
  for (const w of lex(expr)) if (w === '|') cmds.push([]);
    else cmds[cmds.length - 1]!.push(w);
  cmds.forEach((c, i) => {
    const [head, ...rest] = c;
    if (head === undefined) bad(`empty command in ${JSON.stringify(expr)}`);
    if (!FUNCS[head] && (rest.length || i > 0 || !OPERAND.test(head))) {
      bad(`${JSON.stringify(head)} is not supported in ${JSON.stringify(expr)} (supported: .field paths, "strings", numbers and the functions ${Object.keys(FUNCS).join(', ')})`);
    }
    for (const w of rest) if (!OPERAND.test(w)) bad(`${JSON.stringify(w)} is not supported in ${JSON.stringify(expr)}`);
  });
}

function checkNodes(nodes: Node[]): void {
  for (const n of nodes) {
    if (n.t === 'text') continue;
    checkExpr(n.expr);
    if (n.t !== 'out') {
      checkNodes(n.body);
      checkNodes(n.alt);
    }
  }
}

/** compileGoTemplate checks a template up front (so a bad one fails before any work) and returns its renderer. */
export function compileGoTemplate(src: string): (data: unknown) => string {
  const nodes = parseTemplate(src);
  checkNodes(nodes);
  return (data) => {
    // The model is the JSON shape: render from its JSON round trip so the fields match --format json exactly.
    const model = JSON.parse(JSON.stringify(data)) as unknown;
    const out: string[] = [];
    render(nodes, model, model, out);
    return out.join('');
  };
}
