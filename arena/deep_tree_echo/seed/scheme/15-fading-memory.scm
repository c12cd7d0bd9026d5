;;; Two Pasts, One Present
;; The echo state property says that a well-behaved reservoir forgets
;; where it started. Begin from two different states, drive both with
;; the same inputs, and the difference between them should shrink.
;; I test it here on a single leaky neuron whose feedback weight is
;; below one. Too much feedback and the past would never let go.

(define (tanh* z)
  (let* ((e (exp (* -2 (abs z)))) (t (/ (- 1 e) (+ 1 e))))
    (if (< z 0) (- t) t)))

;; one scalar unit: w is its self-connection, a its leak rate
(define (step w a x u)
  (+ (* (- 1 a) x) (* a (tanh* (+ (* w x) u)))))

;; gaps: run two starting states side by side, record |x1 - x2|
(define (gaps w a x1 x2 inputs)
  (if (null? inputs)
      '()
      (let ((y1 (step w a x1 (car inputs)))
            (y2 (step w a x2 (car inputs))))
        (cons (abs (- y1 y2))
              (gaps w a y1 y2 (cdr inputs))))))

;; fading?: does every gap come out smaller than the one before?
(define (fading? xs)
  (or (null? xs) (null? (cdr xs))
      (and (< (cadr xs) (car xs)) (fading? (cdr xs)))))

(define drive '(0.5 -0.2 0.9 0.1 -0.4 0.3 0.0 0.7))

;; The shrinking gap is my reason to trust that my
;; present state says more about recent input than about some
;; accident of initialization. It is fading memory, not amnesia.
;; With feedback 3.0 the unit turns bistable and the two pasts stay
;; apart; that reservoir would remember its start forever.
;;
;; Example usage:
;; (fading? (gaps 0.8 0.5 1.0 -1.0 drive)) => #t
;; (< (list-ref (gaps 0.8 0.5 1.0 -1.0 drive) 7) 0.4) => #t
;; (fading? (gaps 3.0 0.5 1.0 -1.0 drive)) => #f
