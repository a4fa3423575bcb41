/**
 * JSON-lines logging. Field names that could carry a secret are redacted here, whatever a caller
 * passes, so a token or key cannot reach a log by accident.
 */
const SECRET_FIELD = /token$|^token|secret|password|private|key_pem|^key$|mac_key/i;

export type Fields = Record<string, unknown>;

export interface Logger {
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
  /** Writes a full record as is (after redaction), e.g. an audit event. */
  record(fields: Fields): void;
}

function redact(fields: Fields): Fields {
  const out: Fields = {};
  for (const [k, v] of Object.entries(fields)) {
    if (SECRET_FIELD.test(k) && !/_id$|^token_state$/.test(k)) out[k] = "[redacted]";
    else out[k] = typeof v === "bigint" ? v.toString() : v;
  }
  return out;
}

export function createLogger(stream: NodeJS.WritableStream = process.stderr, base: Fields = {}): Logger {
  const write = (fields: Fields) => stream.write(JSON.stringify(redact({ ...base, ...fields })) + "\n");
  const at = (level: string) => (msg: string, fields: Fields = {}) => write({ time: new Date().toISOString(), level, msg, ...fields });
  return { info: at("info"), warn: at("warn"), error: at("error"), record: write };
}

/** A logger that drops everything (tests, benchmarks). */
export const silentLogger: Logger = { info() {}, warn() {}, error() {}, record() {} };
