// A churn model (the `churn` package, made by `edgeport pack`) in React: the form is built from the model's
// manifest, and every change predicts again, in edgeport-client's worker.
import { useEffect, useState } from 'react';
import { load, manifest, type Prediction, type Row } from 'churn';

import { useModel } from './useModel';

const FIRST: Row = { tenure_months: 24, monthly_charges: 70, support_calls: 1, plan: 'basic', region: 'north' };
type Column = keyof Row;

export function App() {
  const state = useModel(load);
  const [row, setRow] = useState<Row>(FIRST);
  const [prediction, setPrediction] = useState<Prediction | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [many, setMany] = useState('');

  useEffect(() => {
    if (state.status !== 'ready') return;
    let current = true; // a slower earlier answer never overwrites a later one
    state.model.predict([row]).then(
      ([p]) => { if (current) { setPrediction(p); setError(null); } },
      (err: Error) => { if (current) setError(err.message); },
    );
    return () => { current = false; };
  }, [state, row]);

  const set = (column: Column, value: string | number) => setRow((r) => ({ ...r, [column]: value }));
  const runMany = async () => {
    if (state.status !== 'ready') return;
    const started = performance.now();
    for (let i = 0; i < 100; i++) await state.model.predict([row]);
    setMany(`100 predictions in ${(performance.now() - started).toFixed(0)} ms`);
  };
  return (
    <main>
      <h1>Will this customer churn?</h1>
      <p id="status">{state.status === 'loading' ? 'Loading the model…' : state.status === 'error' ? `The model could not load: ${state.error.message}` : 'Ready: the model runs in this browser.'}</p>
      <form onSubmit={(e) => e.preventDefault()}>
        {manifest.inputs.map((input) => {
          const column = (input.column ?? input.name) as Column;
          return (
            <label key={column} style={{ display: 'block' }}>
              {column}{' '}
              {input.categories ? (
                <select name={column} value={String(row[column])} onChange={(e) => set(column, e.target.value)}>
                  {input.categories.map((c) => <option key={String(c)} value={String(c)}>{String(c)}</option>)}
                </select>
              ) : (
                <input name={column} type="number" step="any" value={Number(row[column])}
                  onChange={(e) => { if (Number.isFinite(e.target.valueAsNumber)) set(column, e.target.valueAsNumber); }} />
              )}
            </label>
          );
        })}
      </form>
      {prediction && (
        <p>
          Prediction: <strong id="label">{prediction.label}</strong> ({(100 * prediction.confidence).toFixed(1)}%){' '}
          <small id="served-by">served by {prediction.served_by}</small>
        </p>
      )}
      {error && <p role="alert">{error}</p>}
      <button id="many" type="button" disabled={state.status !== 'ready'} onClick={runMany}>Run 100 predictions</button>
      <p id="many-result">{many}</p>
    </main>
  );
}
