// The client's errors: every one has a `code` a UI can switch on (edgeport.d.ts lists them per class).

/** Base class of every error the client throws. */
export class EdgeportError extends Error {
  constructor(message, { code = 'error', cause } = {}) {
    super(message, cause ? { cause } : undefined);
    this.code = code;
  }
}
/**
 * A row doesn't fit the manifest. `code` is one of rows, row-type, extra-column, missing-column, row-length,
 * type, missing-value, range; `row` is the row at fault and `field` the column or input the message names.
 */
export class RowValidationError extends EdgeportError {
  constructor(message, { code, cause, row, field } = {}) {
    super(message, { code, cause });
    this.row = row;
    this.field = field;
  }
}
/** A bundle file doesn't match the sha256 in the manifest, or can't be verified here. */
export class IntegrityError extends EdgeportError {}
/** The manifest, the runtime or the model could not be loaded. */
export class LoadError extends EdgeportError {}
/** Local inference threw or passed its timeout. */
export class InferenceError extends EdgeportError {}
/** The fallback server failed (after one retry) or is not configured. */
export class ServerError extends EdgeportError {}
// names set by hand, not taken from the class: a minifier renames classes (err.name would be 'b')
for (const [type, name] of [[EdgeportError, 'EdgeportError'], [RowValidationError, 'RowValidationError'],
  [IntegrityError, 'IntegrityError'], [LoadError, 'LoadError'], [InferenceError, 'InferenceError'], [ServerError, 'ServerError']]) {
  Object.defineProperty(type.prototype, 'name', { value: name, writable: true, configurable: true });
}
