// Types for edgeport-client's main entry point (edgeport.js). The TF.js runtime is typed in tfjs.d.ts.

/** What the outputs mean: see manifest.schema.json's task. */
export type Task = 'classification' | 'regression' | 'multi-output-classification' | 'anomaly-detection' | 'clustering' | 'transformation';
export type DType = 'float32' | 'float64' | 'int32' | 'int64' | 'string';
/** How rows map to inputs: one matrix input, one [n, 1] input per column, or several named tensor inputs. */
export type Layout = 'matrix' | 'columns' | 'tensors';
/** A row: an object keyed by column (columns, or a matrix input with columns), an array nested like the input's
 * shape[1:] or flat (matrix), or an object of such arrays keyed by input name (tensors). null is a missing value. */
export type Row = Record<string, number | string | null | undefined | unknown[]> | ArrayLike<number | string | null> | unknown[];

export interface ManifestInput { name: string; dtype: DType; shape: (number | null)[]; nullable: boolean; column?: string; columns?: string[]; categories?: (string | number)[];
  /** what an input holds, for forms: steps x features, an image, or free text */ kind?: 'sequence' | 'image' | 'text'; }
export interface ManifestOutput { name: string; dtype: DType; shape: (number | null)[]; role: 'label' | 'probabilities' | 'value' | 'score' | 'distances'; }
export interface Manifest {
  manifest_version: 2; name: string; version: string; format: 'onnx' | 'tfjs-graph'; task: Task;
  layout: Layout; model_file: string; server_model_file: string; inputs: ManifestInput[]; outputs: ManifestOutput[]; classes?: (string | number | boolean)[];
  files: { path: string; bytes: number; sha256: string }[];
  pii?: string[];                // columns the server's prediction log drops or hashes (export --pii)
  feature_stats: Record<string, unknown>; tolerance: { atol: number; rtol: number };
  fallback: { confidence_threshold: number; on_low_confidence: 'server' | 'abstain'; timeout_ms?: number; url?: string | null;
    version_policy?: 'pinned' | 'default'; outputs?: Partial<Record<ManifestOutput['role'], string>> };
  [key: string]: unknown;
}

/** Why a prediction came from the server: 'loading' is a hedged prediction the server won while the runtime loaded. */
export type FallbackReason = 'no-wasm' | 'load-error' | 'integrity' | 'inference-error' | 'timeout' | 'low-confidence' | 'loading';

export interface Prediction {
  probabilities?: number[];      // aligned with manifest.classes
  confidence?: number;           // max(probabilities)
  label?: string | number | boolean | (string | number | boolean)[]; // an array for multi-output-classification
  value?: number | number[];     // regression (an array for several targets), transformation
  score?: number;                // anomaly-detection: decision_function, below 0 is an outlier (label -1)
  distances?: number[];          // clustering: distance to each cluster centre (label is the nearest)
  low_confidence: boolean;
  browser_confidence?: number;  // the browser's confidence, when low confidence sent the row to the server
  served_by: 'browser' | 'server';
  model_version: string;         // the version that answered (the server's model_version for a server answer)
  latency_ms: number;
  fallback_reason: FallbackReason | null;
}

export interface Progress { stage: 'manifest' | 'model' | 'runtime' | 'ready' | 'fallback'; loaded?: number; total?: number; reason?: string; message?: string; }

/** Opt-in browser telemetry: counts of predictions (never rows) reported to the server's
 * POST /v2/models/{name}/versions/{version}/telemetry; a report that can't be sent is dropped. */
export interface TelemetryOptions {
  url?: string;                  // the server to report to; default the fallback URL (no URL: telemetry stays off)
  flushMs?: number;              // how often to report; default 10000 (and on pagehide, and when the page is hidden)
  maxReportsPerMinute?: number;  // default 6; counts wait for the next report meanwhile
  maxPending?: number;           // prediction batches waiting to be counted, past which they are dropped; default 100
}

export interface LoadOptions {
  fallbackUrl?: string | null;   // OIP v2 server base URL; default manifest.fallback.url
  timeoutMs?: number;            // inference timeout before falling back; default manifest.fallback.timeout_ms or 2000; Infinity for none
  loadTimeoutMs?: number;        // model download timeout (a LoadError, code fetch); default 30000; Infinity for none
  serverTimeoutMs?: number;      // per server attempt; default 10000
  confidenceThreshold?: number;
  onLowConfidence?: 'server' | 'abstain';
  retryDelayMs?: number;
  fallbackVersion?: 'pinned' | 'default'; // ask the server for the version this client runs (default), or for its own default
  fallbackOutputs?: Partial<Record<ManifestOutput['role'], string>>; // the server's output names, e.g. { probabilities: 'predict_proba' }
  numThreads?: number;           // default 1 unless the page is cross-origin isolated
  wasmPaths?: string | Record<string, string>;
  worker?: boolean;              // run onnxruntime-web in the client's worker (worker.js); default true in browsers, false in Node
  ort?: unknown;                 // an onnxruntime-web module to run on this thread instead of the client's worker
  hedge?: boolean;               // with a fallback URL: resolve once the manifest is read, race predictions against the server until the runtime is ready
  files?: Record<string, string | URL>; // where to fetch each bundle file (manifest.files[].path -> URL); default: beside the manifest URL
  runtimes?: Runtime[];          // runtimes for other formats: tfjsRuntime from 'edgeport-client/tfjs' for tfjs-graph bundles
  tf?: unknown;                  // a @tensorflow/tfjs module to use instead of importing one (tfjs-graph bundles)
  tfBackend?: string;            // e.g. 'cpu' or 'webgl'; default: TF.js's own choice
  warmup?: boolean;              // tfjs-graph: one run on zeros at load (default true)
  fetch?: typeof fetch;
  forceNoWasm?: boolean;         // behave as if WebAssembly were missing (tests, demos)
  onProgress?: (p: Progress) => void;
  telemetry?: boolean | TelemetryOptions; // report counts of predictions to the server; default off
}

export type RowValidationCode = 'rows' | 'row-type' | 'extra-column' | 'missing-column' | 'row-length' | 'type' | 'missing-value' | 'range';
export type LoadErrorCode = 'manifest' | 'fetch' | 'format' | 'no-wasm' | 'runtime';
export type IntegrityErrorCode = 'hash' | 'no-webcrypto';
/** 'released': predict() on a model after release(). */
export type InferenceErrorCode = 'timeout' | 'inference-error' | 'released';
export type ServerErrorCode = 'no-fallback' | 'server-unreachable' | 'server-status' | 'server-response';
/** Every code the client's errors carry ('error': an EdgeportError thrown without one). */
export type EdgeportErrorCode = RowValidationCode | LoadErrorCode | IntegrityErrorCode | InferenceErrorCode | ServerErrorCode | 'error';

/** `name` is set explicitly on each class, so it survives minification. */
export declare class EdgeportError extends Error {
  constructor(message: string, options?: { code?: EdgeportErrorCode; cause?: unknown });
  name: 'EdgeportError' | 'RowValidationError' | 'IntegrityError' | 'LoadError' | 'InferenceError' | 'ServerError';
  code: EdgeportErrorCode;
}
export declare class RowValidationError extends EdgeportError {
  name: 'RowValidationError';
  code: RowValidationCode;
  row?: number;     // the row at fault (absent for 'rows')
  field?: string;   // the column or input the message names, where one is at fault
}
export declare class IntegrityError extends EdgeportError { name: 'IntegrityError'; code: IntegrityErrorCode; }
export declare class LoadError extends EdgeportError { name: 'LoadError'; code: LoadErrorCode; }
export declare class InferenceError extends EdgeportError { name: 'InferenceError'; code: InferenceErrorCode; }
export declare class ServerError extends EdgeportError { name: 'ServerError'; code: ServerErrorCode; }

/** A runtime for a bundle format other than ONNX (see tfjs.d.ts); ONNX is built in. */
export interface Runtime {
  readonly format: string;
  /** Start what needs no model yet, while the model downloads (ONNX: the worker and its WASM). */
  prepare?(manifest: Manifest, options: LoadOptions): { terminate(reason?: unknown): void } | null;
  createBackend(manifest: Manifest, modelBytes: Uint8Array, context: unknown): Promise<unknown>;
}

export declare class EdgeportModel {
  readonly manifest: Manifest;
  /** With `hedge`: settles when the runtime is ready or has failed (null once it has). */
  loading: Promise<void> | null;
  readonly classes: (string | number | boolean)[] | null;
  readonly columns: ColumnInfo[];
  /** Why the model could not run locally, if it falls back for every call. */
  localError: EdgeportError | null;
  predict(rows: Row[]): Promise<Prediction[]>;
  release(): Promise<void>;
}

/** The manifest URL of a registry's NAME (its production alias), NAME@ALIAS, or NAME at a pinned `version`;
 * registryUrl is edgeport serve's /bundles/ or a static copy of the registry directory. */
export declare function resolveModel(registryUrl: string | URL, reference: string, options?: { version?: string; fetch?: typeof fetch }): Promise<string>;
/** From a manifest URL (or a file path under Node), or a parsed manifest whose files `options.files` locates. */
export declare function loadModel(source: string | URL | Manifest, options?: LoadOptions): Promise<EdgeportModel>;
export declare function buildInputs(manifest: Manifest, rows: Row[]): Record<string, { type: DType; data: ArrayLike<unknown>; dims: number[] }>;
export interface ColumnInfo { name: string; dtype: DType; nullable: boolean; categories?: (string | number)[]; /** 'text': free text, not a category */ kind?: 'sequence' | 'image' | 'text'; }
export declare function describeColumns(manifest: Manifest): ColumnInfo[];
/** A parsed manifest as version 2: version 1 upgraded (layout inferred, nullable false, server_model_file = model_file). */
export declare function upgradeManifest(manifest: unknown): Manifest;
export declare function verifyFile(manifest: Manifest, path: string, bytes: Uint8Array): Promise<void>;
export declare function sha256Hex(bytes: Uint8Array): Promise<string>;
/** The bundle-relative `relative` resolved against where the manifest was loaded from (URL or file path). */
export declare function resolveRelative(manifestUrl: string, relative: string): string;
/** Predictions from a runtime's raw outputs (keyed by role: label, probabilities, value, score, distances), one per row. */
export declare function toResults(manifest: Manifest, raw: Record<string, { data: ArrayLike<unknown>; dims?: readonly number[] }>, rowCount: number): Prediction[];
export declare function toInferRequest(manifest: Manifest, inputs: ReturnType<typeof buildInputs>, parameters?: Record<string, unknown>,
  outputNames?: Partial<Record<ManifestOutput['role'], string>>): object;
