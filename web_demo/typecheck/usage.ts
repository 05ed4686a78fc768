// A type test of client/edgeport.d.ts, compiled (never run) by `tsc -p web_demo` in make test. Each
// `@ts-expect-error` line must fail to compile: if the declarations stop catching that mistake, tsc fails.
import {
  EdgeportError, IntegrityError, LoadError, loadModel, resolveRelative, RowValidationError, ServerError, toResults,
  type EdgeportErrorCode, type Manifest, type Prediction,
} from '../client/edgeport.js';
import { tfjsRuntime } from '../client/tfjs.js';

export async function usage(manifest: Manifest): Promise<void> {
  const model = await loadModel('/bundles/iris/1/manifest.json', { fallbackUrl: null, timeoutMs: 500 });
  const [first]: Prediction[] = await model.predict([{ sepal_length: 5.1, plan: 'basic', visits: null }]);
  const servedBy: 'browser' | 'server' = first.served_by;
  const confidence: number | undefined = first.confidence;
  void servedBy; void confidence;
  // @ts-expect-error: predict takes rows, not one row
  await model.predict({ sepal_length: 5.1 });
  // @ts-expect-error: an option that doesn't exist
  await loadModel('m.json', { fallbackURL: 'http://x' });

  try {
    await model.predict([[5.1, 3.5, 1.4, 0.2]]);
  } catch (err) {
    if (err instanceof RowValidationError) {
      const row: number | undefined = err.row;
      if (err.code === 'missing-value') void row;
      // @ts-expect-error: not a row validation code
      if (err.code === 'hash') void row;
    } else if (err instanceof IntegrityError) {
      const code: 'hash' | 'no-webcrypto' = err.code;
      void code;
    } else if (err instanceof LoadError) {
      // @ts-expect-error: LoadError's codes don't include a server's
      if (err.code === 'server-status') void err;
    } else if (err instanceof ServerError) {
      const name: 'ServerError' = err.name;
      void name;
    } else if (err instanceof EdgeportError) {
      const code: EdgeportErrorCode = err.code;
      // @ts-expect-error: a code no error carries
      if (code === 'nope') void code;
    }
  }

  const url: string = resolveRelative('https://cdn.example/bundles/iris/manifest.json', 'model.onnx');
  const results: Prediction[] = toResults(manifest, { probabilities: { data: [0.1, 0.9], dims: [1, 2] } }, 1);
  void url; void results;
  // @ts-expect-error: toResults needs the row count
  toResults(manifest, {});

  // a parsed manifest with its files' URLs (what edgeport pack generates), hedging, and the TF.js entry point
  const packed = await loadModel(manifest, { files: { 'model.onnx': new URL('./model.onnx', 'https://cdn.example/') }, hedge: true,
    fallbackUrl: 'https://api.example', runtimes: [tfjsRuntime], worker: true });
  if (packed.loading) await packed.loading;
  // @ts-expect-error: runtimes are runtime objects, not names
  await loadModel(manifest, { runtimes: ['tfjs'] });
  // telemetry, opt-in: true (to the fallback server), or where and how often
  await loadModel(manifest, { fallbackUrl: 'https://api.example', telemetry: true });
  await loadModel(manifest, { telemetry: { url: 'https://telemetry.example', flushMs: 5000, maxReportsPerMinute: 2, maxPending: 10 } });
  // @ts-expect-error: flushMs is a number of milliseconds
  await loadModel(manifest, { telemetry: { flushMs: '10s' } });
  // @ts-expect-error: the proxy option became worker
  await loadModel(manifest, { proxy: false });
}
