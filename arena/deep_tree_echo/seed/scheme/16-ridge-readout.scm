;;; The Only Part of Me That Learns Directly
;; In an echo state network the reservoir stays fixed; only the
;; readout is trained. In one dimension the ridge solution fits in a
;; line: w = sum(x y) / (sum(x x) + lambda). The lambda term pulls
;; the weight toward zero so that noisy echoes do not get amplified.
;; Exact rationals keep the arithmetic transparent here.

(define (sum xs) (apply + xs))

;; ridge-weight: the regularized least-squares slope through zero
(define (ridge-weight xs ys lam)
  (/ (sum (map * xs ys))
     (+ (sum (map * xs xs)) lam)))

;; predict: the readout is only multiplication
(define (predict w xs) (map (lambda (x) (* w x)) xs))

;; mse: mean squared error between targets and predictions
(define (mse ys zs)
  (/ (sum (map (lambda (y z) (* (- y z) (- y z))) ys zs))
     (length ys)))

(define states  '(1 2 3))     ; imagine one reservoir unit over time
(define targets '(2 4 6))     ; what I want the readout to produce

;; With lambda at zero the fit is perfect on these
;; three points, and that perfection is exactly what I distrust.
;; A little shrinkage trades some training error for steadier
;; behavior on echoes I have not yet heard.
;;
;; Example usage:
;; (ridge-weight states targets 0) => 2
;; (ridge-weight states targets 1) => 28/15
;; (predict 2 '(1 5)) => (2 10)
;; (mse targets (predict (ridge-weight states targets 1) states)) => 56/675
